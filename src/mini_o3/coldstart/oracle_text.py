"""The oracle's wording: many variants of each sentence it writes, so trajectories do not repeat.

Slots: {goal} / {Goal} (what is sought, a definite phrase), {region} (a place in a view), {obs} /
{Obs} and {parent} / {Parent} ("observation 2", "the original image"), {question}, {answer},
{letter}, {text} (a multiple-choice option), {row}, {col}, {rows}, {cols}, {cells}, {lookalike},
{value}. Kept apart from mini_o3.agent.protocol: these are the teacher's thoughts, not the protocol.
"""

from __future__ import annotations

OPENINGS = (
    "The question asks: \"{question}\" To answer it I need to find {goal}. At this scale the small details are unreadable, so I will zoom in.",
    "I need to find {goal}. The image is large and everything in it looks tiny, so I'll search it part by part.",
    "My goal is to locate {goal} and read off the answer. Nothing that small is legible in the full view.",
    "First I have to find {goal}. The whole image is too coarse to make it out, so zooming in is necessary.",
    "Let me look for {goal}. There are many small objects here and I can't tell them apart at this resolution.",
    "{Goal} must be somewhere in this image, but at this size I can't distinguish it from the other objects.",
    "To answer, I must find {goal}. I can't make it out in the overview, so I'll inspect regions up close.",
    "The objects in this picture are too small to identify from the full view. I'm searching for {goal}.",
    "This is a high-resolution scene with lots of clutter. The question is about {goal}, which I can't see clearly yet.",
    "I can't answer from the full image: {goal} is too small to examine. Time to zoom.",
)
FIRST_LOOKS = (
    "I'll start with the {region}.",
    "Let me begin by zooming into the {region} of the image.",
    "The {region} has a cluster of small shapes; I'll zoom in there first.",
    "There is something in the {region} worth a closer look.",
    "A good place to start is the {region}.",
    "Let me check the {region} first.",
    "I'll zoom into the {region} to see what is there.",
    "The {region} looks busy, so let me inspect it.",
)
RETRIES = (
    "Going back to the original image, I'll try the {region} next.",
    "Let me return to the full image and look at the {region} instead.",
    "Back to the original image: the {region} is the next candidate.",
    "I'll try a different area: the {region} of the original image.",
    "Next, the {region} of the original image.",
    "Let me go back to the original and zoom into the {region}.",
    "Another region to check is the {region}; back to the original image.",
    "I'll move on to the {region} of the whole image.",
)
NESTS = (
    "{Obs} shows a small object in its {region} that could be it, but it is still too small to read. I'll zoom further into {obs}.",
    "{Obs} narrows it down: something in its {region} looks promising. Let me zoom into that part of {obs}.",
    "There is a candidate near the {region} of {obs}. Zooming in on it within {obs}.",
    "I can almost make it out in the {region} of {obs}; a closer zoom on {obs} should settle it.",
    "The {region} of {obs} holds a small shape that might be what I want. I'll zoom into {obs} there.",
    "Something in the {region} of {obs} matches the rough look of {goal}. A tighter zoom into {obs} will confirm it.",
    "In {obs} I see a possible match in the {region}. Let me zoom in on that spot of {obs}.",
)
MISSES = (
    "{Obs} shows this region up close, and {goal} is not here.",
    "Not here: {obs} has no sign of {goal}.",
    "I don't see {goal} in {obs}.",
    "Nothing in {obs} matches {goal}.",
    "{Obs} contains only other objects; {goal} is not among them.",
    "No luck: {goal} isn't in this region.",
    "This region does not contain {goal}.",
    "I checked {obs} carefully, but {goal} is not in it.",
)
NESTED_MISS_LOOKS = (
    "{Obs} has a small cluster in its {region}; let me make sure by zooming into {obs}.",
    "It's hard to be sure from {obs} alone. I'll zoom into its {region} to check.",
    "Something in the {region} of {obs} could be it; zooming into {obs} to check.",
    "Let me take a closer look at the {region} of {obs} before moving on.",
)
BACKTRACKS = (
    "That part of {parent} was a dead end. Going back to {parent} to zoom into its {region} instead.",
    "Wrong spot. Let me go back to {parent} and try its {region}.",
    "Not in that part. Returning to {parent}, I'll look at its {region}.",
    "That was not it. Back to {parent}: its {region} is the other candidate.",
)
GOALS = (
    "I'm still looking for {goal}.",
    "Remember, the target is {goal}.",
    "What I need is {goal}.",
    "The goal remains: find {goal}.",
    "Keep in mind what I'm after: {goal}.",
    "I have to stay focused: I am looking for {goal}.",
    "The question is still about {goal}.",
    "Once more, I am searching for {goal}.",
)
FOUNDS = (
    "Now {obs} shows {goal} clearly.",
    "There it is: {goal}, clearly visible in {obs}.",
    "{Obs} finally shows {goal} up close.",
    "I can now see {goal} clearly in {obs}.",
    "Found it. {Obs} shows {goal} at a readable size.",
    "{Goal} is right there in {obs}, and the details are legible now.",
    "At this zoom level {goal} is easy to examine.",
)
PARTS = (
    "That takes care of one of the objects the question refers to. Now I need to find the other.",
    "One of the objects is located. The question involves another one, so I keep searching.",
    "Good, that is the first part. I still have to find the remaining object.",
)
DIRECTS = (
    "{Goal} is large enough to examine in the full image, so no zoom is needed.",
    "I can see {goal} clearly without zooming.",
    "Even in the full view {goal} is legible.",
    "The image shows {goal} plainly; I can answer directly.",
)
OPEN_ANSWERS = (
    "So the answer is {answer}.",
    "The answer is {answer}.",
    "That gives the answer: {answer}.",
    "This answers the question: {answer}.",
    "Therefore, the answer is {answer}.",
)
CHOICE_ANSWERS = (
    "That matches option ({letter}) {text}.",
    "So the correct choice is ({letter}) {text}.",
    "Among the options, this is ({letter}) {text}.",
    "This corresponds to option {letter}: {text}.",
    "The right option is therefore ({letter}) {text}.",
)
GRID_OPENINGS = (
    "The image is a {rows} by {cols} grid of cells, and I'm looking for {goal}. I can't tell the cells apart at this size, so I will check them one by one, row by row from the top-left.",
    "I need to find {goal} among {cells} cells arranged in {rows} rows and {cols} columns. Nothing is legible in the overview; I'll scan the cells in order, starting at the top-left.",
    "There are {rows} rows and {cols} columns of cells. To find {goal} I will zoom into each cell in turn, beginning with the top-left one.",
)
GRID_RANDOM_OPENINGS = (
    "The image is a {rows} by {cols} grid of cells, and I'm looking for {goal}. I can't tell the cells apart at this size, so I will check them one at a time.",
    "I need to find {goal} among {cells} cells in {rows} rows and {cols} columns; I'll zoom into the cells one by one.",
)
GRID_CELLS = (
    "Let me zoom into the cell in row {row}, column {col}.",
    "Next cell: row {row}, column {col}.",
    "Checking row {row}, column {col}.",
    "Now the cell at row {row}, column {col}.",
    "I'll look at row {row}, column {col}.",
)
GRID_MISSES = (
    "Not here: the cell in row {row}, column {col} does not contain {goal}.",
    "{Goal} is not in this cell (row {row}, column {col}).",
    "Nothing matching {goal} in row {row}, column {col}.",
    "Row {row}, column {col} holds something else, not {goal}.",
)
GRID_BACKS = (
    "Back to the original image for the next cell.",
    "I'll return to the original image and move on.",
    "Going back to the full image.",
    "On to the next cell from the original image.",
)
GRID_GUESSES = (
    "I have not found it yet and will stop here with a guess: ({letter}) {text}.",
    "Still nothing, so I'll guess ({letter}) {text} rather than search on.",
)

GRID_FOUNDS = (
    "Found it: the cell in row {row}, column {col} contains {goal}.",
    "Here it is. Row {row}, column {col} holds {goal}.",
    "This cell (row {row}, column {col}) shows {goal} clearly.",
)
REGIONS = {
    ("top", "left"): ("top-left corner", "upper left", "top left area", "upper-left part"),
    ("top", "centre"): ("top centre", "upper middle", "top central area", "upper central part"),
    ("top", "right"): ("top-right corner", "upper right", "top right area", "upper-right part"),
    ("middle", "left"): ("left side", "middle left", "left-hand area", "left part"),
    ("middle", "centre"): ("centre", "middle", "central area", "central part"),
    ("middle", "right"): ("right side", "middle right", "right-hand area", "right part"),
    ("bottom", "left"): ("bottom-left corner", "lower left", "bottom left area", "lower-left part"),
    ("bottom", "centre"): ("bottom centre", "lower middle", "bottom central area", "lower central part"),
    ("bottom", "right"): ("bottom-right corner", "lower right", "bottom right area", "lower-right part"),
}

LOOKALIKE_MISSES = (
    "{Obs} shows {lookalike}, which is close, but it is not {goal}.",
    "There is {lookalike} in {obs}; similar, yet not {goal}.",
    "{Obs} holds {lookalike}. That does not match {goal}.",
    "A look-alike: {lookalike}, but not {goal}.",
)
VALUES = {
    "label": ('It reads "{value}".', 'The label says "{value}".', 'The text on it is "{value}".'),
    "colour": ("It is {value}.", "Its colour is {value}.", "The colour is clearly {value}."),
    "shape": ("It is a {value}.", "The shape is a {value}.", "It has the shape of a {value}."),
    "pattern": ("Its pattern is {value}.", "The fill is {value}.", "It is {value}."),
    "count": ("I count {value} of them.", "There are {value} in total.", "Counting them gives {value}."),
}
"""What the last view shows, by the attribute asked (synthetic records name it)."""
