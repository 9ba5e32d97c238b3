ALTER TABLE shop.customers RENAME COLUMN full_name TO name;
