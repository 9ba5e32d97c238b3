-- A plain DROP INDEX is fine inside the rollback's transaction (it locks the table briefly).
DROP INDEX IF EXISTS shop.orders_status_idx;
