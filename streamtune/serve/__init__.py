"""Step 7, serving: the streaming WebSocket server over an exported bundle (``server``) and its browser
page (``page.html``)."""
