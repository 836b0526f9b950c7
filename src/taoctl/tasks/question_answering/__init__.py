"""TAO 3.x question_answering (NeMo's extractive QAModel, SQuAD v1.1/v2.0) on a transformers encoder."""
