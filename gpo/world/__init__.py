"""The embedded synthetic world: what the project renders itself (shapes, signs) and its labels."""
