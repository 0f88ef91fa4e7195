"""The dashboard's static files (HTML, JavaScript, CSS), served by the workers on GET; no build step."""
