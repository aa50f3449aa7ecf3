"""The reasoning model: base model resolution, the shared prompt/answer format, training data,
QLoRA fine-tuning, adapter merge and the training report.
"""
