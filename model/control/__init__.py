"""Control inputs of a request: preprocessed control maps, inpainting masks, ControlNet conditioning."""
