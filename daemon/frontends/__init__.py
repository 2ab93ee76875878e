"""Front doors: each turns its protocol into Requests and ReplySink calls, then calls intake."""
