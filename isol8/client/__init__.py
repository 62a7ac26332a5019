"""RemoteIsol8 and AsyncRemoteIsol8: the engine's API over HTTP to an `isol8 serve`."""
