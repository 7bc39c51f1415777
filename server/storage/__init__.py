"""Storage layer: the only package that holds SQL. Functions take an AsyncSession/connection
and return domain objects, never ORM rows."""
