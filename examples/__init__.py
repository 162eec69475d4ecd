"""Games written the way the README's guide shows; the tests play them."""
