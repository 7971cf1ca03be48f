"""Floor rpc: connections, servers and the event loop; the only code touching sockets."""
