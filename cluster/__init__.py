"""Ray clusters: connecting (embedded, an address, or auto) and placing the roles of a job."""
