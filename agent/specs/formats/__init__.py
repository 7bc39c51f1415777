"""One module per config format: parse into a document, edit dotted keys, serialize."""
