-- pg_deploy: reversible=lossy
-- Release v2: orders get a status. Reverting drops the column and the statuses recorded since (hence "lossy").
ALTER TABLE shop.orders ADD COLUMN status text NOT NULL DEFAULT 'new'
    CHECK (status IN ('new', 'paid', 'shipped', 'cancelled'));
