"""Dataset, LoRA SFT, evaluation, merge/export and training jobs."""
