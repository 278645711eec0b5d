"""Operations: systemd notify protocol, health and metrics endpoints."""
