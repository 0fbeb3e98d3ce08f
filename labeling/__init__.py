"""The labeling workbench: InstructGPT's labeling interface, fed by the platform's traffic.

A separate process (``rlhf workbench``) serves a browser page where labelers rank, compare,
rate and write answers, and where a lead creates queues and reads agreement and progress.
Judgments leave through the ordinary feedback path (broker → ingester → store); the
workbench's own tables only record which labeler got and finished which item.

Modules: ``settings`` (LabelingSettings, HumanEvalSettings), ``queues`` (store queries on
the workbench tables), ``assignment`` (who gets which item next), ``agreement`` (pure
maths: pairwise agreement, Krippendorff's alpha, Borda consensus), ``winrate`` (pure
maths: human win rate, Wilson interval), ``human_eval`` (the deploy gate on the store's
verdicts), ``sources`` (building queues from traffic,
uploaded prompts or a candidate policy), ``submit`` (the feedback sinks), ``api`` (routes)
and ``static/`` (the page, plain HTML/JS/CSS, no build step).
"""
