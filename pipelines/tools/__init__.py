"""Tools the agent can call during a call: a campaign's MCP servers and the like."""
