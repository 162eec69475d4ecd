"""Play a synclab game inside an oTree session: a page that sends the participant, a page that shows the score.

``Play`` sends the participant to the synclab experiment's shared join link with their oTree
participant code as the label. Its button first submits the page to oTree (so that oTree moves
the participant on to ``Results``), then leaves for synclab. At the end synclab posts the score to
``/api/participant_vars/{code}`` and sends the participant back to ``/InitializeParticipant/{code}``,
which oTree answers with the page the participant is on: ``Results``, which reads
``participant.vars``.
"""

from otree.api import BaseConstants, BaseGroup, BasePlayer, BaseSubsession, Page


class C(BaseConstants):
    NAME_IN_URL = "synclab_round_trip"
    PLAYERS_PER_GROUP = None
    NUM_ROUNDS = 1


class Subsession(BaseSubsession):
    pass


class Group(BaseGroup):
    pass


class Player(BasePlayer):
    pass


class Play(Page):
    @staticmethod
    def vars_for_template(player: Player) -> dict:
        link = player.session.config["synclab_join_url"]
        return dict(join_url=f"{link}?label={player.participant.code}")


class Results(Page):
    @staticmethod
    def vars_for_template(player: Player) -> dict:
        found = player.participant.vars
        return dict(
            arrived="synclab_score" in found,
            score=found.get("synclab_score"),
            status=found.get("synclab_status"),
            completion_code=found.get("synclab_completion_code"),
        )


page_sequence = [Play, Results]
