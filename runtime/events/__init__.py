"""Defect events: schema, durable spool, ZeroMQ publisher and replay server, reference subscriber."""
