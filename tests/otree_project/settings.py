"""The oTree project of synclab's oTree tests: one app that sends each participant to synclab and reads what comes back."""

from os import environ

SESSION_CONFIGS = [
    dict(
        name="synclab_round_trip",
        display_name="synclab round trip",
        app_sequence=["synclab_round_trip"],
        num_demo_participants=2,
        # the experiment's shared join link, e.g. http://127.0.0.1:8000/join/AbCd (set per session)
        synclab_join_url="",
    ),
]

SESSION_CONFIG_DEFAULTS = dict(real_world_currency_per_point=1.00, participation_fee=0.00, doc="")
PARTICIPANT_FIELDS: list[str] = []
SESSION_FIELDS: list[str] = []
LANGUAGE_CODE = "en"
REAL_WORLD_CURRENCY_CODE = "USD"
USE_POINTS = True
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = environ.get("OTREE_ADMIN_PASSWORD")
DEMO_PAGE_INTRO_HTML = ""
SECRET_KEY = environ.get("OTREE_SECRET_KEY", "synclab-tests-only")
