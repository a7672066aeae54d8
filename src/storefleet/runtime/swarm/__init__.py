"""The Swarm runtime: each store a stack of Swarm services, placed on a node of the swarm."""
