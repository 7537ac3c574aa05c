"""Outputs: skeleton overlays and JSON / JSON-lines files."""

from rtpose.sinks.draw import draw_people, line_width_for
from rtpose.sinks.json_out import JsonlWriter, to_jsonable, write_json, write_jsonl

__all__ = ["JsonlWriter", "draw_people", "line_width_for", "to_jsonable", "write_json", "write_jsonl"]
