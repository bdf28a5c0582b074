-- The customers with the largest order totals.
SELECT customer, ROUND(SUM(amount), 2) AS total
FROM orders
GROUP BY customer
ORDER BY total DESC
LIMIT :limit
