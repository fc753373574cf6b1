"""Jobs launched under numbers of a sweeper's choosing (hydra.job.num), for ablate's sweepers
(hydra_plugins/): Hydra numbers a launch's jobs one after the other from its first, so the jobs go
out in runs of consecutive numbers."""


def numbered(launcher, jobs: list[list[str]], numbers: list[int]) -> list:
    """Launches `jobs` (each a list of overrides) as job numbers `numbers`; their JobReturns in order."""
    results, start = [], 0
    for end in range(1, len(jobs) + 1):
        if end == len(jobs) or numbers[end] != numbers[end - 1] + 1:
            results += launcher.launch(jobs[start:end], initial_job_idx=numbers[start])
            start = end
    return results
