"""tracking stage of the rtpose data flow."""
