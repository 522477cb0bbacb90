"""Neutral building blocks for model code: backbones, heads, criteria, small module utilities,
the Grad-CAM maths and the model factory. Nothing here knows the training loop, hooks or drawing."""
