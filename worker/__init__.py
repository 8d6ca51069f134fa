"""chatq worker side: the session runner, the agent loop, the provider and its tools."""
