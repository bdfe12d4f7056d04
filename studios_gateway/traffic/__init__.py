"""What passes through the gateway: the access log, traffic metrics, per-session usage
and transfer quotas. The data paths (HTTP proxy, SSH proxy) only report facts here."""
