from retinadet.utils.scores import round_score


def test_scores_keep_six_significant_digits_so_small_scores_keep_their_order():
    small = [0.00123456, 0.00123449, 0.00123441]  # one tie-free order that five decimals would collapse to 0.00123
    assert [round(s, 5) for s in small] == [0.00123] * 3
    written = [round_score(s) for s in small]
    assert written == sorted(written, reverse=True) and len(set(written)) == 3
    assert round_score(0.876543219) == 0.876543 and round_score(1.0) == 1.0 and round_score(0) == 0.0
