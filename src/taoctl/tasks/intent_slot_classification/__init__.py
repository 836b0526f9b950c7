"""TAO 3.x intent_slot_classification (NeMo's joint IntentSlotClassificationModel) on a transformers encoder."""
