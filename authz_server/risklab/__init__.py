"""The risk lab: offline tooling for the risk stage (simulated sites, attacks, training, evaluation).

Serving code (`authz_server.risk`) never imports this package.
"""
