"""What TAO's conversational NLP tasks (text_classification, token_classification, ...) share: the
NeMo-style YAML spec sections, the transformers encoder with its tokenizer, data-file checks and the
task base class."""
