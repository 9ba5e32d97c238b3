-- Release v3: a reporting view over customers and their orders.
CREATE VIEW shop.customer_order_totals AS
SELECT c.id AS customer_id, c.full_name, count(o.id) AS order_count, coalesce(sum(o.total_cents), 0) AS total_cents
FROM shop.customers c
LEFT JOIN shop.orders o ON o.customer_id = c.id
GROUP BY c.id, c.full_name;
