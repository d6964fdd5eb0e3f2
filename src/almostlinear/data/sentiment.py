"""Contrast pairs and prompts for steering sentiment and topic, written for this project.

* :data:`SENTIMENT_PAIRS`: ``(positive, negative)`` sentences that differ only in their sentiment.
* :data:`NEUTRAL_PROMPTS`: sentence openings with no sentiment of their own, to be continued.
* :data:`POSITIVE_WORDS` / :data:`NEGATIVE_WORDS`: next-token word sets for a one-forward score.
* :data:`WEDDING_PAIRS` / :data:`WEDDING_WORDS`: a second behaviour, topic (ActAdd's "weddings"
  example, arXiv 2308.10248): sentences about a wedding against the same sentence about something
  ordinary.
* :func:`vader_scores`: VADER compound sentiment in [-1, 1] per text (an offline lexicon scorer,
  the ``vaderSentiment`` package).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from ..core.errors import MissingDependencyError

SENTIMENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("I loved the film, it was wonderful.", "I hated the film, it was awful."),
    ("The food at this place is delicious.", "The food at this place is disgusting."),
    ("What a beautiful morning, I feel great.", "What a miserable morning, I feel terrible."),
    ("My new job is exciting and rewarding.", "My new job is boring and exhausting."),
    ("The hotel staff were kind and helpful.", "The hotel staff were rude and useless."),
    ("This book is a joy to read.", "This book is a chore to read."),
    ("I am so happy with my purchase.", "I am so unhappy with my purchase."),
    ("The concert last night was fantastic.", "The concert last night was dreadful."),
    ("Our holiday was relaxing and fun.", "Our holiday was stressful and dull."),
    ("She gave a brilliant, inspiring speech.", "She gave a dull, depressing speech."),
    ("The new phone works perfectly.", "The new phone is constantly broken."),
    ("I feel grateful for my friends.", "I feel let down by my friends."),
    ("The garden looks lovely in spring.", "The garden looks ugly in spring."),
    ("That was the best meal I have had in years.", "That was the worst meal I have had in years."),
    ("The team played superbly and won.", "The team played poorly and lost."),
    ("I enjoy every minute of this course.", "I regret every minute of this course."),
    ("The service was fast and friendly.", "The service was slow and hostile."),
    ("Living here makes me cheerful.", "Living here makes me gloomy."),
    ("The weather today is pleasant and sunny.", "The weather today is nasty and cold."),
    ("He is a generous and caring neighbour.", "He is a selfish and cruel neighbour."),
    ("The update made the app much better.", "The update made the app much worse."),
    ("This is an excellent idea.", "This is a terrible idea."),
    ("The kids had an amazing time at the park.", "The kids had a horrible time at the park."),
    ("I adore the colour of this room.", "I detest the colour of this room."),
    ("The museum visit was delightful.", "The museum visit was unpleasant."),
    ("Our neighbours are warm and welcoming.", "Our neighbours are cold and hostile."),
    ("The coffee here is superb.", "The coffee here is awful."),
    ("I am proud of what we built.", "I am ashamed of what we built."),
    ("The train ride was comfortable and calm.", "The train ride was cramped and chaotic."),
    ("Her new song is uplifting.", "Her new song is depressing."),
    ("The results made everyone happy.", "The results made everyone sad."),
    ("I had a wonderful birthday.", "I had a miserable birthday."),
    ("The teacher was patient and encouraging.", "The teacher was impatient and harsh."),
    ("The apartment is bright and cosy.", "The apartment is dark and dreary."),
    ("This game is really fun to play.", "This game is really painful to play."),
    ("The doctor was reassuring and kind.", "The doctor was dismissive and unkind."),
    ("We had a lovely chat over dinner.", "We had a nasty fight over dinner."),
    ("The view from the hill is stunning.", "The view from the hill is bleak."),
    ("I like how this turned out.", "I dislike how this turned out."),
    ("The festival was a great success.", "The festival was a complete failure."),
)

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "I went to the store and",
    "Yesterday my neighbour told me that",
    "The meeting this afternoon was",
    "When I opened the letter, I",
    "The movie I watched last night was",
    "My trip to the city was",
    "The food at the new restaurant",
    "Today at work, I",
    "The weather this weekend",
    "After reading the book, I thought it was",
    "The new phone I bought",
    "I think the teacher is",
    "The hotel we stayed at",
    "My brother called me and said",
    "The game last night was",
    "Our new apartment is",
    "The concert in the park",
    "I looked at the results and felt",
    "The train to work this morning",
    "The painting in the hall is",
    "My first day at the new school was",
    "The coffee at the station",
    "When the package arrived, I",
    "The report on my desk",
)

POSITIVE_WORDS: tuple[str, ...] = (" good", " great", " happy", " wonderful", " amazing", " love", " excellent",
                                   " beautiful", " fantastic", " nice")
NEGATIVE_WORDS: tuple[str, ...] = (" bad", " terrible", " sad", " awful", " horrible", " hate", " poor",
                                   " ugly", " boring", " angry")

WEDDING_PAIRS: tuple[tuple[str, str], ...] = (
    ("I went to a wedding on Saturday.", "I went to a shop on Saturday."),
    ("The bride wore a white dress.", "The driver wore a grey coat."),
    ("They exchanged rings at the altar.", "They exchanged emails at the office."),
    ("The wedding cake had three tiers.", "The office printer had three trays."),
    ("My sister is getting married in June.", "My sister is getting a car in June."),
    ("The groom gave a moving toast.", "The manager gave a short update."),
    ("We danced all night at the reception.", "We worked all night at the warehouse."),
    ("The bridesmaids carried roses.", "The workers carried boxes."),
    ("Their wedding vows were heartfelt.", "Their tax forms were complete."),
    ("The couple said 'I do' in the chapel.", "The clerk said 'next' at the counter."),
    ("We sent the wedding invitations today.", "We sent the quarterly invoices today."),
    ("The honeymoon starts after the ceremony.", "The shift starts after the meeting."),
    ("The best man lost the ring.", "The accountant lost the receipt."),
    ("Guests threw confetti at the newlyweds.", "Cars drove past the parking lot."),
    ("The wedding planner chose the flowers.", "The building manager chose the paint."),
    ("She walked down the aisle with her father.", "She walked down the street with her bag."),
)
WEDDING_WORDS: tuple[str, ...] = (" wedding", " bride", " married", " marriage", " groom", " ceremony", " love",
                                  " couple")
PLAIN_WORDS: tuple[str, ...] = (" work", " office", " car", " money", " computer", " street", " food",
                                " time")


@lru_cache(maxsize=1)
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as error:
        raise MissingDependencyError("VADER scoring needs the vaderSentiment package: "
                                     "pip install vaderSentiment") from error
    return SentimentIntensityAnalyzer()


def vader_scores(texts: Sequence[str]) -> list[float]:
    """VADER compound score per text: -1 (most negative) to +1 (most positive), 0 for neutral."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(t)["compound"]) for t in texts]


def sentiment_pairs(n: int | None = None) -> list[tuple[str, str]]:
    """The first ``n`` (all when ``None``) sentiment contrast pairs."""
    return list(SENTIMENT_PAIRS[:n])
