"""The local web console: chat with the persona and curate it in a browser."""
