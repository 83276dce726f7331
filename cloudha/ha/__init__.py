"""VM high availability: the persistent HA work queue (``op_ha_work``) and, later, its manager."""
