"""I/O glue around ``core``: the WebSocket worker and the ingest process, and what both share."""
