"""dispatcher: a transaction dispatcher whose scheduling brain is PostgreSQL."""
