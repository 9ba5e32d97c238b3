ALTER TABLE shop.orders DROP COLUMN status;
