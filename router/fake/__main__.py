"""``python -m router.fake`` serves the fake upstream (see ``router.fake.cli``)."""

from router.fake.cli import main

main()
