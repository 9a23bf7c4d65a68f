"""Views read a Trace and build something to show: a rich renderable or a string. The CLI prints."""
