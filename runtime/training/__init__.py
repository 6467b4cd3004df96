"""Fine-tuning: `training` holds the training steps and their data, `finetune` the LoRA training loop and
its hyperparameters, `adapters` the adapters trained in process (reading, writing, stacking them), and
`api_finetune` fine-tuning through a provider's API.
"""
