"""TAO 3.x punctuation_and_capitalization (NeMo's PunctuationCapitalizationModel) on a transformers encoder."""
