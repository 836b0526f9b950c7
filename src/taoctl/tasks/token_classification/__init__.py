"""TAO 3.x token_classification (NER; NeMo's TokenClassificationModel) on a transformers encoder."""
