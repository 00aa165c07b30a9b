"""The webhooks actor: lifecycle events become signed, retried HTTP deliveries."""
