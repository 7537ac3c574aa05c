"""sources stage of the rtpose data flow."""
