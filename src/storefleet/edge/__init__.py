"""The edge: one reverse proxy (Caddy) in front of every store, serving each at its own HTTPS
hostname. `routes.py` is the route table (files the proxy reads on every request, so a route
change needs no reload); `caddy.py` the proxy's configuration and admin API; `process.py` and
`container.py` run it as a supervised process or as a Docker container."""
