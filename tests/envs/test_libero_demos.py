"""LIBERO's HDF5 demonstration files: the loader on a small file recorded here with LIBERO itself
(libero_object/3, 2 episodes of a scripted policy: lower the gripper and close it, 12 steps each, 64 px
agent view) by ``mmpost.envs.libero.record_demonstrations``."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from mmpost.envs.libero import read_demonstrations

RECORDED = Path(__file__).parents[1] / "fixtures" / "libero" / "libero_object_3_scripted.hdf5"


def test_rows_pair_each_observation_with_the_next_actions():
    rows = read_demonstrations(RECORDED, horizon=8)
    assert len(rows) == 24  # 2 episodes x 12 control steps
    assert {r["instruction"] for r in rows} == {"pick up the bbq sauce and place it in the basket"}
    with h5py.File(RECORDED) as file:
        actions = np.asarray(file["data/demo_1/actions"])
        first = file["data/demo_0/obs"]
        np.testing.assert_allclose(rows[0]["state"], np.concatenate([first["ee_pos"][0], first["ee_ori"][0],
                                                                     first["gripper_states"][0]]))
        np.testing.assert_array_equal(rows[0]["image"], first["agentview_rgb"][0][::-1, ::-1])  # upright
    second = rows[12:]
    np.testing.assert_allclose(second[0]["actions"], actions[:8])
    tail = second[-1]["actions"]  # past the end the arm holds still, the gripper keeps its command
    np.testing.assert_allclose(tail[0], actions[-1])
    assert (tail[1:, :6] == 0).all() and (tail[1:, 6] == actions[-1, 6]).all()
    assert rows[0]["state"].shape == (8,) and rows[0]["image"].shape == (64, 64, 3)


def test_a_file_that_is_not_a_libero_demonstration_file_is_named(tmp_path):
    with h5py.File(tmp_path / "other.hdf5", "w") as file:
        file.create_dataset("x", data=[1, 2])
    with pytest.raises(ValueError, match="other.hdf5: not a LIBERO demonstration file"):
        read_demonstrations(tmp_path / "other.hdf5", horizon=8)
