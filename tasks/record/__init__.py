"""The job record: a job's states and outcome codes (:mod:`tasks.record.states`), its hash in
Redis with every atomic transition (:mod:`tasks.record.jobs`), the hash's contract: keys,
field names, the scripts' typed arguments (:mod:`tasks.record.contract`), and beside the
records the reuse index: identical requests served once (:mod:`tasks.record.reuse`), and the
tenants' caps: jobs in flight and spend per day (:mod:`tasks.record.tenants`).

May import the leaf modules at the top of ``tasks`` (``errors``, ``names``...) and ``config``;
nothing else in ``tasks``.

The step lease
--------------
Whichever step holds a job holds it through one lease in the job's hash, five fields (as arq
has one in-progress key per job, and Sidekiq's unit of work is the lease):

* ``owner``: who holds it: a message's task id (stable across its retries and redeliveries), or
  the one execution that last moved it;
* ``token``: the claim or chain held: a random id that travels with the step's messages;
* ``seq``: the number of the holder's transition, bumped as it moves; ``-1``
  (:data:`~tasks.record.states.SEQ_DONE`) once no message may act on the token any more;
* ``lease_until``: until when the holder may act without a sign of life (epoch seconds);
* ``tries``: the holder's retries after transient faults (in the record because a retry that
  found no budget comes back as a fresh message, Celery's count at 0).

=============  ==========================  =======================  ===========================
state          holder (``owner``)          ``token`` / ``seq``      ``lease_until``, ``tries``
=============  ==========================  =======================  ===========================
submitting     the submit message          (none, or the claim it   , the POST's retries
               (task id; the reconciler    last gave back)
               re-sends under it)
posting        the submit message          the POST claim (one      the claim's end; the
                                           execution's id) /        POST's retries
                                           0 claimed, 1 sent
polling        the message that started    the chain (the claim     , the poll's retries
               the chain, then the poll    NanoGPT accepted, or     (an answer resets them)
               execution that moved it     random) / the due poll
downloading    the poll or submit that     as it left it / ``-1``   none
               moved it there              from a poll
ended          the webhook's sender        kept / ``-1``            its claim's end
               (notify task id), once it
               claims it
=============  ==========================  =======================  ===========================

How a step takes it: a create writes the first owner (the submit, the poll chain started by name,
or a rejected message's task id); ``begin_post`` takes the POST claim from the owner
(``submitting`` and ``owner`` guard it) under a fresh token with ``seq`` 0 and ``lease_until``;
``post_sent`` moves ``seq`` to 1 just before the POST leaves (``post_not_sent`` moves it back, by
the execution that lost the mark's reply and so sent nothing); the ticket starts the chain under
the same token, ``seq`` 0; each poll moves ``seq`` on, guarded by (token, seq), and names itself
the owner; settle frees ``owner``, ``lease_until`` and ``tries`` and closes ``seq``; the webhook's
sender then takes the free lease (or one whose ``lease_until`` has passed).

A re-run recognises its own earlier run by the lease it left (issue 19): a create by ``owner``;
a claim, a mark or an answer by ``token`` (and ``seq``); a poll's move by ``owner`` = its
execution id. It answers as the first run did. A settle is the exception: True means "this
call recorded the outcome", once per job; its caller recognises an outcome of its own by
``outcome_id`` (a cancel's is made from its task id). A duplicate message finds another token,
seq or owner and is refused. A POST claim still at ``seq`` 0 when its ``lease_until`` has passed
sent nothing: the submit's next delivery gives it back and sends, so no job ends
``SUBMIT_UNCONFIRMED`` unless a POST left.

The reconciler sees an expired lease as a job still in ``tts:due`` past its check time (every
transition moves that time with the lease; a POST claim's is its ``lease_until`` plus the
recovery grace): it re-sends the step :func:`~tasks.record.states.next_step` names, and that
step's guards decide, from the lease, whether it may act.

The budget's **grant** is not part of the lease: it is the budget's promise of one NanoGPT call
to a job's next step (``grant`` field, and the ``tts:granted`` set that expires it), written by
the releaser, spent by the step when it calls, and it outlives a hand-over of the lease (the
reconciler re-sends a step that still finds its grant). Its value names the step it was granted
to (:func:`tasks.record.contract.poll_grant`, built from the lease's ``seq``), so it cannot be
spent by another. Issue 22 reworks the budget; keeping the promise its own keeps that change out
of the lease.

Upgrading: a record written before the lease (``submit_owner``, ``post_attempt``,
``chain_owner``...) is not read by this version. Drain before upgrading: stop sending, let
``tts:due`` empty of active jobs (``tts-worker status``), then roll the workers (README).
"""
