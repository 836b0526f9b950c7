"""TAO 3.x text_classification (NeMo's TextClassificationModel) on a transformers encoder."""
