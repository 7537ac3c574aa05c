"""postprocess stage of the rtpose data flow."""
