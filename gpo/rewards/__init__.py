"""Rewards: pure arithmetic (counting.py, text.py) and the models that feed it (detector.py, ocr.py).

Every scorer has the uniform signature `(images, prompts) -> list[Score]`.
"""
